"""Layer 8, components: how a config becomes a run's collaborators (`build`), and the pieces a
recipe runs — checkpoints, distributed training, evaluation, logging, sampling, run folders."""
