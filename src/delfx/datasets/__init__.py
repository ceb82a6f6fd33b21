"""Datasets in the revisited Oxford/Paris layout, their ground truth and their catalogue."""
