#!/usr/bin/env bash
# Paper Table 1 row: ViT-B/16 + RoBERTa-base, adapter r=64, routing none (VQAv2 answer classification).
# usage: bash scripts/vit_roberta_vqa_adapter_r64_none.sh NGPU [section.key=value ...]   (model.recipe=released: the authors' code)
exec bash "$(dirname "$0")/_launch.sh" vit_roberta_vqa_adapter_r64_none "$@"
