"""Layer 2, arithmetic: the paper's equations as pure functions — divergences, perturbation
geometry, Rs (Eq. 1, Algorithm 1), metrics, random-state snapshots, the learning-rate schedule."""
