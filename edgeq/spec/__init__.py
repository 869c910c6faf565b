"""What edgeq can be asked for, as validated data: recipes, targets and the backend catalogue.

Torch-free (tests/test_architecture.py enforces it): the CLI lists and validates recipes and
targets on a device that has only `edgeq[runtime]`.
"""
