"""Privacy algorithms both sides apply: differential privacy (clip, noise, accountant) and its release rules."""
