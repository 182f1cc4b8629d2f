#!/usr/bin/env bash
# Paper Table B4 row: ViT-L/16 + RoBERTa-large, adapter r=64, routing add (VQAv2 answer classification).
# usage: bash scripts/vit_roberta_large_vqa_adapter_r64_add.sh NGPU [section.key=value ...]   (model.recipe=released: the authors' code)
exec bash "$(dirname "$0")/_launch.sh" vit_roberta_large_vqa_adapter_r64_add "$@"
