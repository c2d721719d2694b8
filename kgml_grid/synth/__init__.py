"""The synthetic world: a small deterministic process model standing in for *ecosys*.

See :mod:`kgml_grid.synth.physics` for the equations and
:mod:`kgml_grid.synth.params` for every parameter with its unit.
"""

from kgml_grid.synth.params import PERTURBED_B, WorldParams, load_world_params
from kgml_grid.synth.world import PRESETS, Preset, WorldInfo, generate_world

__all__ = [
    "PERTURBED_B",
    "PRESETS",
    "Preset",
    "WorldInfo",
    "WorldParams",
    "generate_world",
    "load_world_params",
]
