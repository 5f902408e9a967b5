"""robsal: adversarial training for sharper, measurable saliency maps of medical-image classifiers.

Stable public API: :func:`robsal.attacks.pgd`, :func:`robsal.saliency.explain`,
:func:`robsal.models.load`.
"""

__version__ = "0.1.0"

# Before anything imports torch: on a machine that other processes keep busy, OpenMP threads
# that wait passively instead of spinning (robsal.threads; a policy the user set is kept).
from robsal.threads import configure_wait_policy as _configure_wait_policy

_configure_wait_policy()
