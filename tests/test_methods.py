"""The baseline pretraining methods of voco_pretrain (simmim, swin_ssl, simclr): masks, views, losses, heads, metrics,
the all-gathered NT-Xent under two processes, and every method trained, exported and resumed through the bundle."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from monai.networks.nets import SwinUNETR

from conftest import BUNDLES, PRETRAIN_TINY, assert_resumes_exactly, bundle_workflow, record_losses, run_bundle_cli
from voco_components.engines import (
    METHODS,
    MaskedCropPrepareBatch,
    SimMIMCriterion,
    TwoViewPrepareBatch,
    check_method,
)
from voco_components.handlers import BestMetricSaver
from voco_components.losses import GatheredContrastiveLoss, SwinSSLLoss, masked_l1
from voco_components.metrics import MaskedL1, RotationAccuracy, ViewMatchingTop1
from voco_components.networks import SimMIMNet, SwinEncoder
from voco_components.transforms import MaskedCropsd, OverlappingViewsd, RotationCutoutViewsd, expand_mask

BASELINES = ("simmim", "swin_ssl", "simclr")
TINY_ENCODER = {"feature_size": 12, "window_size": 4}


def position_volume(shape=(64, 48, 40)) -> torch.Tensor:
    """A (1, X, Y, Z) volume whose voxel value is its flat index: a crop's first voxel tells where it was cut."""
    return torch.arange(math.prod(shape), dtype=torch.float64).reshape(1, *shape)


def start_of(crop: torch.Tensor, shape: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(crop[0, 0, 0, 0]), shape))


def box(volume: torch.Tensor, start: tuple[int, ...], roi: tuple[int, ...]) -> torch.Tensor:
    return volume[:, start[0] : start[0] + roi[0], start[1] : start[1] + roi[1], start[2] : start[2] + roi[2]]


# ---------------------------------------------------------------- simmim


@pytest.mark.parametrize("ratio, unit", [(0.6, (8, 8, 8)), (0.75, (4, 8, 16)), (0.3, (16, 16, 16))])
def test_mask_covers_the_configured_fraction_of_units_of_each_crop(ratio, unit):
    volume, roi = position_volume(), (32, 32, 32)
    transform = MaskedCropsd("image", roi_size=roi, num_crops=5, mask_ratio=ratio, mask_unit=unit)
    transform.set_random_state(7)
    out = transform({"image": volume})
    units = tuple(r // u for r, u in zip(roi, unit, strict=True))
    assert out["image"].shape == (5, 1, *roi) and out["mask"].shape == (5, *units) and out["mask"].dtype == torch.bool
    expected = round(ratio * math.prod(units))
    assert [int(m.sum()) for m in out["mask"]] == [expected] * 5
    for crop in out["image"]:  # every crop is a box of the volume
        assert torch.equal(crop, box(volume, start_of(crop, volume.shape[1:]), roi))
    # a unit's voxels are all masked or all kept: expanding repeats each unit over its block
    voxels = expand_mask(out["mask"], roi)
    for i, j, k in np.ndindex(*units):
        block = voxels[
            :, i * unit[0] : (i + 1) * unit[0], j * unit[1] : (j + 1) * unit[1], k * unit[2] : (k + 1) * unit[2]
        ]
        assert torch.equal(block, out["mask"][:, i, j, k, None, None, None].expand_as(block))


def test_masking_refuses_units_off_the_token_grid():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        MaskedCropsd("image", roi_size=(32, 32, 32), mask_unit=(3, 8, 8))
    with pytest.raises(ValueError, match="divisible by mask_unit"):
        MaskedCropsd("image", roi_size=(32, 32, 32), mask_unit=(12, 8, 8))


def test_masked_l1_is_zero_on_unmasked_voxels_and_the_mean_over_masked_ones():
    torch.manual_seed(0)
    target = torch.rand(2, 2, 8, 8, 8)
    mask = torch.rand(2, 8, 8, 8) < 0.4
    off_mask = target + torch.where(mask.unsqueeze(1), 0.0, 5.0)
    assert float(masked_l1(off_mask, target, mask)) == 0.0
    prediction = (target + torch.randn_like(target)).requires_grad_()
    loss = masked_l1(prediction, target, mask)
    by_hand = sum(
        abs(float(prediction[n, c, x, y, z]) - float(target[n, c, x, y, z]))
        for n, x, y, z in mask.nonzero().tolist()
        for c in range(2)
    ) / (2 * int(mask.sum()))
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)
    loss.backward()
    assert torch.all(prediction.grad[~mask.unsqueeze(1).expand_as(target)] == 0)
    assert torch.all(prediction.grad[mask.unsqueeze(1).expand_as(target)] != 0)


def test_simmim_replaces_exactly_the_masked_embeddings_by_the_mask_token():
    torch.manual_seed(0)
    net = SimMIMNet(SwinEncoder(**TINY_ENCODER))
    seen = []
    net.encoder.swinViT.patch_embed.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    x = torch.rand(2, 1, 32, 32, 32)
    mask = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    mask[0, 1, 2, 3] = mask[1, 0, 0, 0] = mask[1, 3, 3, 3] = True
    reconstruction = net(x, mask)
    assert reconstruction.shape == x.shape
    plain = net.encoder.swinViT.patch_embed(x).detach()  # no mask outside SimMIMNet.forward
    tokens = expand_mask(mask, plain.shape[2:])  # a unit of 8 voxels holds 4³ tokens of 2 voxels
    embedded = seen[0].permute(0, 2, 3, 4, 1)
    assert torch.equal(embedded[tokens], net.mask_token.detach().expand(int(tokens.sum()), -1))
    assert torch.equal(embedded[~tokens], plain.permute(0, 2, 3, 4, 1)[~tokens])
    criterion = SimMIMCriterion()
    loss = criterion(reconstruction, {"image": x, "mask": mask})
    assert float(loss) == pytest.approx(float(masked_l1(reconstruction, x, expand_mask(mask, x.shape[2:]))))
    loss.backward()
    assert net.mask_token.grad.abs().sum() > 0


def test_masked_crop_batch_reaches_the_network_with_its_mask():
    transform = MaskedCropsd("image", roi_size=(32, 32, 32), num_crops=3, mask_unit=(8, 8, 8))
    items = []
    for seed in (1, 2):
        transform.set_random_state(seed)
        items.append(transform({"image": (position_volume() % 256).to(torch.uint8)}))
    batch = {k: torch.stack([i[k] for i in items]) for k in ("image", "mask")}
    inputs, targets, args, kwargs = MaskedCropPrepareBatch()(batch)
    assert inputs.dtype == torch.float32 and inputs.shape == (6, 1, 32, 32, 32) and args == ()
    torch.testing.assert_close(inputs, batch["image"].flatten(0, 1).float() / 255)
    assert torch.equal(kwargs["mask"], batch["mask"].flatten(0, 1)) and targets["mask"] is kwargs["mask"]


# ---------------------------------------------------------------- swin_ssl


def test_rotation_labels_match_the_rotation_applied_and_cutouts_cover_the_ratio():
    volume, roi = position_volume(), (24, 24, 16)
    transform = RotationCutoutViewsd("image", roi_size=roi, num_crops=6, cutout_ratio=0.3)
    transform.set_random_state(3)
    out = transform({"image": volume})
    assert out["image"].shape == (6, 2, 1, *roi) and out["rotation"].shape == (6, 2)
    assert set(out["rotation"].flatten().tolist()) <= {0, 1, 2, 3} and len(set(out["rotation"].flatten().tolist())) > 1
    for views, turns in zip(out["image"], out["rotation"], strict=True):
        unturned = [torch.rot90(view, -int(k), dims=(1, 2)) for view, k in zip(views, turns, strict=True)]
        start = start_of(unturned[0], volume.shape[1:])
        for view in unturned:  # both views are the same crop of the volume, turned by their label
            assert torch.equal(view, box(volume, start, roi))
    coverage = out["cutout"].float().mean(dim=(2, 3, 4))
    assert torch.all(coverage >= 0.3) and torch.all(coverage < 0.7)


def test_two_view_batch_cuts_out_the_inputs_and_keeps_the_uncut_targets():
    transform = RotationCutoutViewsd("image", roi_size=(16, 16, 16), num_crops=2)
    transform.set_random_state(0)
    item = transform({"image": (position_volume() % 256).to(torch.uint8)})
    batch = {k: item[k][None] for k in ("image", "rotation", "cutout")}
    inputs, targets = TwoViewPrepareBatch()(batch)
    views = batch["image"][0].transpose(0, 1).flatten(0, 1).float() / 255  # first views, then second views
    cutout = batch["cutout"][0].transpose(0, 1).flatten(0, 1)
    torch.testing.assert_close(targets["image"], views)
    assert torch.all(inputs[:, 0][cutout] == 0)
    torch.testing.assert_close(inputs[:, 0][~cutout], views[:, 0][~cutout])
    assert targets["rotation"].tolist() == batch["rotation"][0].T.flatten().tolist()


def test_swin_ssl_loss_is_the_sum_of_its_three_terms():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 2])
    embeddings, reconstruction, target = torch.randn(6, 5), torch.rand(6, 1, 4, 4, 4), torch.rand(6, 1, 4, 4, 4)
    loss = SwinSSLLoss(temperature=0.5, weights=(1.0, 2.0, 3.0))
    total = loss(logits, labels, embeddings, reconstruction, target)
    rotation = -torch.log_softmax(logits, 1)[torch.arange(6), labels].mean()
    reconstruction_l1 = (reconstruction - target).abs().mean()
    contrastive = nt_xent_loop(embeddings[:3], embeddings[3:], 0.5)
    torch.testing.assert_close(loss.terms["rotation"], rotation)
    torch.testing.assert_close(loss.terms["contrastive"], contrastive.float())
    torch.testing.assert_close(total, rotation + 2 * contrastive.float() + 3 * reconstruction_l1)


# ---------------------------------------------------------------- simclr and NT-Xent


def nt_xent_loop(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent by a loop over the 2N embeddings: each against its partner, over all others (float64)."""
    z = torch.cat((a, b)).double()
    n = a.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        cosines = [torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm()) for j in range(2 * n)]
        numerator = torch.exp(cosines[partner] / temperature)
        denominator = sum(torch.exp(cosines[j] / temperature) for j in range(2 * n) if j != i)
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_a_loop_over_pairs(temperature):
    torch.manual_seed(1)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    loss = GatheredContrastiveLoss(temperature)(a, b)
    torch.testing.assert_close(loss.double(), nt_xent_loop(a, b, temperature), rtol=1e-5, atol=1e-6)


def _gathered_rank(rank: int, world: int, port: int, out: str) -> None:
    """One gloo rank: its rows of both views through a shared linear layer, the gathered loss, DDP's averaging."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    a, b = torch.randn(2 * world, 6), torch.randn(2 * world, 6)
    rows = slice(2 * rank, 2 * rank + 2)
    loss = GatheredContrastiveLoss(0.5)(layer(a[rows]), layer(b[rows]))
    loss.backward()
    for parameter in layer.parameters():  # what DistributedDataParallel does with the gradients
        dist.all_reduce(parameter.grad)
        parameter.grad /= world
    torch.save({"loss": loss.detach(), "grads": [p.grad for p in layer.parameters()]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_gathered_nt_xent_under_two_gloo_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    world = 2
    mp.spawn(_gathered_rank, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    a, b = torch.randn(2 * world, 6), torch.randn(2 * world, 6)
    loss = GatheredContrastiveLoss(0.5)(layer(a), layer(b))
    loss.backward()
    torch.testing.assert_close(loss.double(), nt_xent_loop(layer(a), layer(b), 0.5), rtol=1e-5, atol=1e-6)
    for rank in range(world):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], loss.detach())
        for got, expected in zip(result["grads"], [p.grad for p in layer.parameters()], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_overlapping_views_overlap_and_their_intensity_is_applied_on_the_device():
    volume, roi = position_volume(), (16, 16, 16)
    transform = OverlappingViewsd("image", roi_size=roi, num_pairs=8, max_shift=0.5, flip_prob=0.0, rot90_prob=0.0)
    transform.set_random_state(5)
    out = transform({"image": volume})
    for first, second in out["image"]:
        s1, s2 = start_of(first, volume.shape[1:]), start_of(second, volume.shape[1:])
        assert torch.equal(first, box(volume, s1, roi)) and torch.equal(second, box(volume, s2, roi))
        assert all(abs(p - q) <= r // 2 for p, q, r in zip(s1, s2, roi, strict=True))  # they overlap
    batch = {"image": out["image"][None], "intensity": out["intensity"][None]}
    inputs, _ = TwoViewPrepareBatch()(batch)
    for pair in range(8):
        for view in range(2):
            scale, offset = out["intensity"][pair, view].tolist()
            torch.testing.assert_close(inputs[view * 8 + pair], out["image"][pair, view] * scale + offset)


def test_overlapping_views_flip_and_turn_each_view_on_its_own():
    volume, roi = position_volume(), (16, 16, 16)
    transform = OverlappingViewsd("image", roi_size=roi, num_pairs=16, flip_prob=0.5, rot90_prob=0.5)
    transform.set_random_state(2)
    out = transform({"image": volume})
    plain = [torch.equal(v, box(volume, start_of(v, volume.shape[1:]), roi)) for v in out["image"].flatten(0, 1)]
    assert any(plain) and not all(plain)


# ---------------------------------------------------------------- metrics


def test_pretext_metrics_against_hand_computed_values():
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    second = torch.tensor([[0.9, 0.1], [1.0, 0.2], [0.7, 0.7]])  # view 2 of crop 1 is nearest to crop 0's first view
    metric = ViewMatchingTop1()
    metric.update((torch.cat((first, second)), None))
    # first -> second: crop 0 -> 0 (0.99), crop 1 -> 2 (0.707 > 0.196), crop 2 -> 2; second -> first: 0 -> 0,
    # 1 -> 0 (0.98 > 0.91), 2 -> 2
    assert metric.compute() == pytest.approx(4 / 6)
    rotation = RotationAccuracy()
    rotation.update(({"rotation": torch.eye(4)[[0, 1, 2, 2]]}, {"rotation": torch.tensor([0, 1, 2, 3])}))
    assert rotation.compute() == pytest.approx(3 / 4)
    masked = MaskedL1()
    target = torch.zeros(1, 1, 4, 4, 4)
    prediction = torch.full_like(target, 2.0)
    prediction[..., :2] = 1.0
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0] = mask[0, 1, 1, 1] = True  # one unit of 2³ voxels in each half (values 1 and 2)
    decollated = [{"pred": prediction[0], "label": {"image": target[0], "mask": mask[0]}, "image": target[0]}]
    masked.update(masked._output_transform(decollated))
    assert masked.compute() == pytest.approx(1.5)


def test_best_checkpoint_can_keep_the_lowest_metric(tmp_path):
    from types import SimpleNamespace

    network = torch.nn.Linear(1, 1)
    saver = BestMetricSaver(tmp_path, network, "val_masked_l1", mode="min")
    for score in (0.5, 0.7, 0.3, 0.4):
        saver(SimpleNamespace(state=SimpleNamespace(metrics={"val_masked_l1": score}, epoch=1)))
    assert json.loads((tmp_path / "checkpoint_best.json").read_text())["score"] == 0.3
    with pytest.raises(ValueError, match="'max' or 'min'"):
        BestMetricSaver(tmp_path, network, "x", mode="lowest")


# ---------------------------------------------------------------- the bundle


def test_method_registry_refuses_unknown_methods_and_a_missing_overlay():
    assert sorted(METHODS) == ["simclr", "simmim", "swin_ssl", "voco"]
    with pytest.raises(ValueError, match=r"'mae'.*\['simclr', 'simmim', 'swin_ssl', 'voco'\]"):
        check_method("mae", "voco")
    with pytest.raises(ValueError, match=r"configs/methods/simclr\.json"):
        check_method("simclr", "voco")
    with pytest.raises(ValueError, match="variant 'paper'"):
        check_method("simmim", "simmim", "official")
    for name in METHODS:
        assert (BUNDLES / "voco_pretrain" / "configs" / METHODS[name].overlay).is_file()


def test_unknown_method_on_the_command_line_is_refused_with_the_list(tmp_path):
    result = run_bundle_cli("voco_pretrain", ["train.json"], {"bundle_root": str(tmp_path), "method": "byol"})
    assert result.returncode != 0
    assert (
        "unknown pretraining method 'byol'; the methods are ['simclr', 'simmim', 'swin_ssl', 'voco']" in result.stderr
    )
    assert not (tmp_path / "outputs" / "checkpoints").exists()


def method_configs(method: str) -> tuple[str, str]:
    return ("train.json", f"methods/{method}.json")


@pytest.mark.slow
@pytest.mark.parametrize("method", [*BASELINES, "voco"])
def test_every_method_exports_an_encoder_that_loads_strictly_into_swinunetr(tmp_path, method):
    wf = bundle_workflow("voco_pretrain", method_configs(method), bundle_root=str(tmp_path), **PRETRAIN_TINY)
    losses = record_losses(wf)
    wf.run()
    wf.finalize()
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(k.startswith("swinViT.") for k in state)
    target = SwinUNETR(in_channels=1, out_channels=14, **TINY_ENCODER)
    target.swinViT.load_state_dict({k.removeprefix("swinViT."): v for k, v in state.items()}, strict=True)
    trained = wf.parser.get_parsed_content("network_def").state_dict()
    assert all(torch.equal(trained[k].cpu(), v) for k, v in state.items())
    info = json.loads((tmp_path / "models" / "model.json").read_text())
    assert info["method"] == method and info["steps"] == 4 and isinstance(info["method_settings"], dict)
    assert METHODS[method].pretext_metrics[0] in info["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("method", BASELINES)
def test_every_method_trains_from_the_bundle_command_and_evaluates(tmp_path, method):
    configs = list(method_configs(method))
    result = run_bundle_cli("voco_pretrain", configs, {**PRETRAIN_TINY, "bundle_root": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "models" / "model.json").read_text())["method"] == method
    evaluate = run_bundle_cli(
        "voco_pretrain", [*configs, "evaluate.json"], {**PRETRAIN_TINY, "bundle_root": str(tmp_path)}, run_id="run"
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    metrics = json.loads((tmp_path / "outputs" / "eval" / "metrics.json").read_text())
    for name in METHODS[method].pretext_metrics:
        key = name.removeprefix("val_")
        assert math.isfinite(metrics[key]) and math.isfinite(metrics["init_" + key])


@pytest.mark.slow
@pytest.mark.parametrize("method", BASELINES)
def test_every_method_survives_a_kill_and_resumes_exactly(tmp_path, method):
    assert_resumes_exactly(tmp_path, "voco_pretrain", {**PRETRAIN_TINY, "max_steps": 6}, 5, 4, method_configs(method))


def test_method_overlays_leave_the_shared_data_path_to_train_json():
    """An overlay replaces the method's parts only: the stream, sampler, checkpoints, probe and export stay."""
    shared = {"train#dataset", "train#sampler", "train#dataloader", "train#handlers", "validate#probe", "export_path"}
    for name in METHODS:
        overlay = json.loads((BUNDLES / "voco_pretrain" / "configs" / METHODS[name].overlay).read_text())
        assert overlay["method"] == overlay["method_parts"] == name
        assert not shared & set(overlay)


@pytest.mark.slow
def test_simclr_trains_under_ddp_with_two_processes_and_gathers_its_negatives(tmp_path):
    """multi_gpu_train.json + methods/simclr.json under torchrun on CPU (gloo): the NT-Xent of each rank gathers the
    views of both ranks (torch.distributed.nn.all_gather), trains, checkpoints and exports from rank 0."""
    overrides = {**PRETRAIN_TINY, "bundle_root": str(tmp_path), "max_steps": 2, "val_every_steps": 2}
    configs = ["train.json", "multi_gpu_train.json", "methods/simclr.json"]
    result = run_bundle_cli("voco_pretrain", configs, overrides, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state and all(k.startswith("swinViT.") for k in state)
    assert json.loads((tmp_path / "models" / "model.json").read_text())["method"] == "simclr"
    assert json.loads((tmp_path / "outputs" / "cost.json").read_text())["world_size"] == 2
