"""Stage 2, evidence distillation: from stage 1's export, train all three neuron groups plus the whole FFN of
the target layers to write a short summary of the relevant evidence in the top-K documents.

    deepspeed --num_gpus N train/stage2.py --config configs/embedded.yaml [--stage2.init_from DIR] [--resume auto]

Also runs under ``torchrun`` and ``srun``. Starts from ``<runtime.output_dir>/stage1/export`` unless
``stage2.init_from`` says otherwise; writes ``<runtime.output_dir>/stage2/`` (see ``train/loop.py``). Baselines
run here too, selected by ``--stage2.method`` (any method of ``neurorit/methods.py`` with a stage-2 rule, e.g.
``layer_tuning`` or ``robust_sft``, with ``--stage2.init_from`` set to the base model when they should not
start from stage 1).
"""
from train.loop import main

if __name__ == "__main__":
    main("stage2")
