"""The demo: every part of fedcogen on one small federation, and its report."""
