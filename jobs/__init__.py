"""Entry points: ``python -m jobs.<name>`` and the ``clipsr`` console script."""
