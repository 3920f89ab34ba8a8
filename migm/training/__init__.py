"""Training: the VQ-VAE, the evaluation classifier, the base model, trajectories of its sampler,
and the shortcut (resumable, torchrun-ready). Evaluation lives in `migm.evaluation`."""
