"""How far a tiny difference carries through a training, per precision: one weight of the first convolution is
changed before training, and the trained weights and running statistics are compared with an unchanged run's.

On a CPU every run is deterministic, so the difference is only the one put in. It shows why a resumed fp16 run on
a GPU (whose reductions differ in the last bits from run to run) ends far from an uninterrupted one while a bf16
run does not (docs/training.md, "Exact"): a difference that survives the cast of the weights to the autocast
precision grows within a few epochs; one the cast rounds away never reaches the network.

    python benchmarks/bench_amp_sensitivity.py                      # 1 ulp and a relative 2e-3, 4 epochs
    python benchmarks/bench_amp_sensitivity.py --epochs 2 --patches 12 --changes 2e-3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.training_shards import experiment_options, real_dataset  # noqa: E402

from snowcloud.augment import Augmentation  # noqa: E402
from snowcloud.dataset_stats import load_split  # noqa: E402
from snowcloud.loader import ShardDataset  # noqa: E402
from snowcloud.train import load_training_stats  # noqa: E402
from snowcloud.training.loop import Trainer  # noqa: E402
from snowcloud.training.runtime import Runtime  # noqa: E402
from snowcloud.training.state import trajectory_options  # noqa: E402

PRECISIONS = {"float32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def trained_state(stats_path: Path, state_dir: Path, amp: torch.dtype | None, change: float, epochs: int) -> dict:
    """The trained model's state after a CPU training in `amp` autocast (fp16 with a grad scaler), the first
    weight of the first convolution multiplied by 1 + `change` first (0: unchanged; 'ulp': the next float32)."""
    options = experiment_options(epochs=epochs, batch_size=4, workers=0, augmentation={"flip_p": 0.5})
    training = options["training"]
    stats, split = load_training_stats(stats_path), load_split(stats_path)
    trainer = Trainer(
        ShardDataset(split["train"], augment=Augmentation.from_options(training["augmentation"]), seed=0),
        ShardDataset(split["validation"]),
        model_options=options["model"],
        in_channels=len(stats["bands"]),
        training=training,
        class_weights=[float(weight) for weight in stats["class_weights"]["values"]],
        class_names=stats["classes"],
        runtime=Runtime(torch.device("cpu"), amp, False, False, 0),
        state_path=state_dir / "state.pt",
        fingerprint_inputs={"training": trajectory_options(training)},
    )
    if amp == torch.float16:
        trainer.scaler = torch.amp.GradScaler("cpu")  # the GPU's fp16 path (the CPU runtime has none)
    if change:
        with torch.no_grad():
            first = next(trainer.model.parameters()).view(-1)
            first[0] = torch.nextafter(first[0], first[0] + 1) if change == "ulp" else first[0] * (1 + change)
    return trainer.run().model.state_dict()


def largest_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> tuple[float, str]:
    differences = {
        name: float((a[name].float() - b[name].float()).abs().max()) for name in a if a[name].is_floating_point()
    }
    worst = max(differences, key=differences.get)
    return differences[worst], worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patches", type=int, default=24, help="patches per date (3 dates, the last validates)")
    parser.add_argument("--changes", nargs="+", default=["ulp", "2e-3"], help="'ulp' or a relative change")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        stats_path = real_dataset(root / "data", dates=3, patches=args.patches)
        print(f"| change to one weight | {' | '.join(PRECISIONS)} |\n|---|{'---|' * len(PRECISIONS)}")
        for change in args.changes:
            cells = []
            for name, amp in PRECISIONS.items():
                change_value = change if change == "ulp" else float(change)
                reference = trained_state(stats_path, root / f"{name}-reference", amp, 0, args.epochs)
                changed = trained_state(stats_path, root / f"{name}-{change}", amp, change_value, args.epochs)
                difference, where = largest_difference(changed, reference)
                cells.append(f"{difference:.2g} ({where})")
            print(f"| {change} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
