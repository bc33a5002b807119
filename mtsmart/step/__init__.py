"""Layer 7, one step: the owner of a micro-batch's objective (`objective.Objective`)."""
