#!/usr/bin/env bash
# Paper Table 1 row: ViT-B/16 + RoBERTa-base, lora r=64, routing proj (VQAv2 answer classification).
# usage: bash scripts/vit_roberta_vqa_lora_r64_proj.sh NGPU [section.key=value ...]   (model.recipe=released: the authors' code)
exec bash "$(dirname "$0")/_launch.sh" vit_roberta_vqa_lora_r64_proj "$@"
