"""Stage 1, noise suppression: train the irrelevant-only neurons so that irrelevant documents lead to EOS at once.

    deepspeed --num_gpus N train/stage1.py --config configs/embedded.yaml [--stage1.lr 1e-5 ...] [--resume auto]

Also runs under ``torchrun`` and ``srun`` (and as a single process). Reads the neuron map from
``<runtime.output_dir>/mining``; writes ``<runtime.output_dir>/stage1/`` (see ``train/loop.py``), whose
``export/`` is where stage 2 starts. ``--stage1.method`` picks another method with a stage-1 rule (see
``neurorit/methods.py``), e.g. ``neurorit_hard_deactivation``, which trains nothing and exports the base model
with its irrelevant-only neurons folded to zero.
"""
from train.cli import stage1

if __name__ == "__main__":
    stage1()
