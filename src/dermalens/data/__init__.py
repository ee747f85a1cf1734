"""Data: reading every dataset layout, checking it, splitting it by lesion, caching it.

- `readers`: one reader per layout -> `LesionDataset` (HAM10000, ISIC 2018, DermaMNIST, class folders,
  synthetic), `detect_format` and `open_dataset`
- `validation`: decode check, bad-data policy, issue CSV, dataset summary
- `split`: lesion-grouped, label-stratified splits and folds, leakage check
- `cache`: `resize_image` (the one resize) and the resize-once image cache
- `transforms`, `sampler`, `datamodule`: what the model is fed during training
"""
