"""Shared CLI options of the tests that run `opentrack` on rendered scene folders: no model weights needed."""

WEIGHT_FREE_SETS = [
    "--set",
    "perception.features.name=color_hist",
    "--set",
    "perception.labeler.name=none",
    "--set",
    "keyframes.every_n=1",
    "--set",
    "lift.min_mask_pixels=40",
]
