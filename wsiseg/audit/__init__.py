"""Privacy audits: gradient inversion against each protection, and the one-run canary audit of epsilon."""
