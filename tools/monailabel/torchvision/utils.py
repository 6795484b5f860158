"""The two ``torchvision.utils`` names MONAI Label imports; calling either is an error."""


def _unavailable(name: str) -> NotImplementedError:
    return NotImplementedError(f"torchvision.utils.{name} is not available: this is the MONAI Label stand-in package.")


def make_grid(*args, **kwargs):
    raise _unavailable("make_grid")


def save_image(*args, **kwargs):
    raise _unavailable("save_image")
