"""Workstation side of fer-edge: data, models, training and evaluation on FER-2013."""
