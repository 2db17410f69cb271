"""Stage 2, evidence distillation: from stage 1's export, train all three neuron groups plus the whole FFN of
the target layers to write a short summary of the relevant evidence in the top-K documents.

    deepspeed --num_gpus N train/stage2.py --config configs/embedded.yaml [--stage2.init_from DIR] [--resume auto]

Also runs under ``torchrun`` and ``srun``. A method with both stages (Neuro-RIT, random_neurons) starts from
``<runtime.output_dir>/stage1/export``, a stage-2-only baseline (``--stage2.method layer_tuning``, ``lora``,
``robust_sft``: see ``neurorit/methods.py``) from ``model.path``, unless ``stage2.init_from`` says otherwise.
Writes ``<runtime.output_dir>/stage2/`` (see ``train/loop.py``).
"""
from train.cli import stage2

if __name__ == "__main__":
    stage2()
