"""Pre-registered studies: a grid of variants × settings × seeds, run resumably, reported with
seed-paired differences (`mtsmart study STUDY.yaml`; docs/study.md)."""
