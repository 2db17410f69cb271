"""Run under a launcher with any number of ranks: ``train/stage1.py`` with the given arguments, where ``neurorit.dist``
is given the two pieces a resume on another world size needs if it lacks them (``to_universal`` and
``TrainEngine.load(..., universal=True)``; train/checkpoint.py says what they do). Once dist.py has them, this
runs the entry unchanged."""
import argparse
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _install_universal_resume() -> None:
    from neurorit import dist

    if hasattr(dist, "to_universal"):
        return

    def to_universal(tag_dir: str, out_dir: str) -> None:
        from deepspeed.checkpoint import ds_to_universal

        ds_to_universal.main(argparse.Namespace(input_folder=tag_dir, output_folder=out_dir, num_extract_workers=1,
                                                num_merge_workers=1, keep_temp_folder=False, strict=True,
                                                inject_missing_state=False))

    plain_load = dist.TrainEngine.load

    def load(self, ckpt_dir: str, tag: str, universal: bool = False):
        self._engine._config.load_universal_checkpoint = universal
        return plain_load(self, ckpt_dir, tag)

    dist.to_universal = to_universal
    dist.TrainEngine.load = load


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    _install_universal_resume()
    path = os.path.join(ROOT, "train", "stage1.py")
    sys.argv = [path] + sys.argv[1:]
    runpy.run_path(path, run_name="__main__")
