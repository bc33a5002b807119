"""Regularisers behind one interface (docs/adversarial.md): SMART's Rs, FGSM, FGM, PGD, FreeLB, the
gradient penalty, R3F and R-Drop.

`base` is the interface, `registry.build_adversary` maps `adversarial.method` to a method, `config`
holds the options. Nothing is imported here, so reading a configuration (`adversarial.config`)
does not load the methods or the encoder libraries.
"""
