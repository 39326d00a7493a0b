"""The ground floor: types, errors, settings, profiles and units every layer shares.

Nothing here imports anything of autotune outside this package.
"""
