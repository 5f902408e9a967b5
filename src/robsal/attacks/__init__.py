"""Adversarial attacks in [0, 1] pixel space.

Public: :func:`pgd` (stable), :func:`attack_mode`.
"""

from robsal.attacks.pgd import attack_mode, pgd

__all__ = ["attack_mode", "pgd"]
