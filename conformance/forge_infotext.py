"""Read PNGs with Forge's own code: what its PNG Info tab would show for each file.

Run with the Python of Forge's venv, from anywhere:

    $FORGE_PYTHON conformance/forge_infotext.py --forge-dir $FORGE_DIR a.png b.png ...

Prints one JSON object: file name -> {"infotext": the `parameters` text Forge finds in the file
(`modules.images.read_info_from_image`), "parameters": what `modules.infotext_utils.
parse_generation_parameters` makes of it}. Importing Forge's modules reads its command line, so
the CPU flags are put there first; nothing is loaded onto any device.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """JSON-safe: Forge's parser returns a few non-JSON types (tuples, floats as str, ...)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forge-dir", type=Path, required=True)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    files = [f.resolve() for f in args.files]
    forge = args.forge_dir.resolve()
    os.chdir(forge)
    sys.path.insert(0, str(forge))
    # A data folder of its own: Forge's start-up writes its config there, not into the checkout.
    data = tempfile.mkdtemp(prefix="forge-infotext-")
    sys.argv = [sys.argv[0], "--always-cpu", "--skip-torch-cuda-test", "--data-dir", data]
    # Forge prints its start-up chatter to stdout; only the JSON may go there.
    with contextlib.redirect_stdout(io.StringIO()):
        from modules_forge import initialization
        from PIL import Image

        initialization.initialize_forge()  # Forge's own sys.path set-up, as its launcher does
        from modules import initialize

        initialize.imports()  # the shared options parse_generation_parameters consults
        from modules import images, infotext_utils, shared

    # The parser drops `Model` when it names the selected checkpoint; no server runs here, so
    # nothing is selected and every key the file has is kept.
    shared.opts.data["sd_model_checkpoint"] = ""

    out = {}
    for path in files:
        with Image.open(path) as image:
            text, _ = images.read_info_from_image(image)
        parsed = infotext_utils.parse_generation_parameters(text or "")
        out[path.name] = {"infotext": text, "parameters": _plain(parsed)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
