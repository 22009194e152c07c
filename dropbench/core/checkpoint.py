"""What every resumable stage shares: RNG states as plain tensors, and checkpoints written atomically and read
weights-only (tensors and plain Python values; a pickled object is refused, never run)."""

import io
import random
import re
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dropbench.core.errors import UserInputError
from dropbench.core.identity import RunIdentity
from dropbench.core.io import atomic_write


def rng_state() -> dict:
    """This process's torch, numpy, Python (and CUDA) RNG states, in types weights-only loading reads back."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's own device: a resumed run may see fewer
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = own_cuda_rng_state(state["cuda"], torch.cuda.current_device())
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def own_cuda_rng_state(saved: torch.Tensor | list, device_index: int) -> torch.Tensor | None:
    """The CUDA RNG state a process on GPU ``device_index`` restores: the one saved (its own device's), or, from a
    checkpoint that saved every visible GPU's, that GPU's (None where the saving node had fewer)."""
    if isinstance(saved, torch.Tensor):
        return saved
    return saved[device_index] if device_index < len(saved) else None


def gather_rng_states() -> list[dict]:
    """Every rank's ``rng_state()``, in rank order (a collective: every rank calls it)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [rng_state()]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rng_state())
    return gathered


def own_rng_state(states: list[dict]) -> dict:
    """This rank's state among ``gather_rng_states()``'s (the last one where a run resumes on more ranks)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return states[min(rank, len(states) - 1)]


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` into a temp file renamed into place: a kill during the save leaves the previous file whole."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def load_checkpoint(path: Path, field: str, hint: str, map_location="cpu") -> dict:
    """Weights-only loading of a checkpoint: tensors and plain Python values, no class at all. Anything else, a
    pickled payload above all, is refused in one line naming what it holds and ``hint``, the fix."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a checkpoint we wrote
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"a pickled {found.group(1)}, which no checkpoint holds" if found else err.__class__.__name__
        raise UserInputError(field, f"cannot read checkpoint '{path}' ({what}); {hint}") from None


def run_tag(identity: RunIdentity) -> dict:
    """The run a checkpoint belongs to, as the checkpoint records it: its name (seeds included) and settings digest."""
    return {"run": identity.stem().rstrip("_"), "digest": identity.digest}


def check_same_run(held: dict | None, tag: dict, where: Path) -> None:
    """Refuse to resume from ``where`` when the checkpoints there are another run's (``held``: their ``run_tag``)."""
    if held != tag:
        other = (held or {}).get("run", "another run")
        raise UserInputError(
            "--resume",
            f"'{where}' holds checkpoints of {other}, not of this run ({tag['run']}); "
            "resume with that run's command or give a new --work-dir",
        )
