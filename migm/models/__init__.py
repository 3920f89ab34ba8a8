"""Model definitions: base MIGMs, the VQ tokenizer, the evaluation classifier, presets."""
