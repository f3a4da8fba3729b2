"""Package list only; all metadata lives in pyproject.toml.

recipes/, data_prep/ and profiles/ sit at the top of the repository (design.md section 2) and are
installed as rlkit.recipes, rlkit.data_prep and rlkit.profiles (see package-dir in pyproject.toml).
"""

from setuptools import find_packages, setup

setup(packages=find_packages("src") + ["rlkit.recipes", "rlkit.data_prep", "rlkit.profiles"])
