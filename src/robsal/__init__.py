"""robsal: adversarial training for sharper, measurable saliency maps of medical-image classifiers.

Stable public API: :func:`robsal.attacks.pgd`, :func:`robsal.saliency.explain`,
:func:`robsal.models.load`.
"""

__version__ = "0.1.0"
