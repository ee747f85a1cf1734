"""Data: reading every dataset layout, checking it, splitting it by lesion, caching it.

- `sources`: readers -> `LesionDataset` (HAM10000, ISIC 2018, DermaMNIST, class folders, synthetic)
- `validation`: decode check, bad-data policy, issue CSV, dataset summary
- `split`: lesion-grouped, label-stratified splits and folds, leakage check
- `cache`: `resize_image` (the one resize) and the resize-once image cache
- `transforms`, `sampler`, `datamodule`: what the model is fed during training
"""
