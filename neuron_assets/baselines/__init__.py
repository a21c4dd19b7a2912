"""What an explanation is compared with: token baselines and other neurons' explanations (method.md §6)."""
