#!/usr/bin/env bash
# Paper Tables 1-3 row: ViT-B/16 + RoBERTa-base, adapter r=128, routing add (VQAv2 answer classification).
# usage: bash scripts/vit_roberta_vqa_adapter_r128_add.sh NGPU [section.key=value ...]   (model.recipe=released: the authors' code)
exec bash "$(dirname "$0")/_launch.sh" vit_roberta_vqa_adapter_r128_add "$@"
