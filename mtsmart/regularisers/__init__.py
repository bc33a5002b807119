"""Layer 6, regularisers: SMART's Rs, FGSM, FGM, PGD, FreeLB, the gradient penalty, R3F and R-Drop
behind one interface (docs/adversarial.md), and the Bregman teacher as an optimizer wrapper
(`bregman`, docs/bregman.md).

`base` is the interface, `registry.build_adversary` maps a method's options to the method. Nothing
is imported here; import the submodules.
"""
