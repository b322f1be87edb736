"""The Forge simulator that ships with MobileSD (`mobilesd forge-sim`, `mobilesd demo`).

A real HTTP server speaking Forge's `/sdapi/v1` (see `docs/forge-api.md`): time per step and
per checkpoint switch, global progress, interrupt and skip, Basic auth, silent fallbacks, real
PNGs with infotext, img2img and inpaint, extras upscaling, VAE/text-encoder modules, scripts with
the ControlNet and ADetailer request shapes, and faults switchable at run time
(`SimulatedForge.set_fault`, `/_sim/faults`).
"""

from .app import create_simulator_app
from .config import SimulatorConfig
from .faults import FAULT_KINDS, Fault
from .server import SimServer, add_simulator_arguments, config_from_args, free_port, run_simulator
from .state import GenerationRecord, ProgressState, SimulatedForge

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "GenerationRecord",
    "ProgressState",
    "SimServer",
    "SimulatedForge",
    "SimulatorConfig",
    "add_simulator_arguments",
    "config_from_args",
    "create_simulator_app",
    "free_port",
    "run_simulator",
]
