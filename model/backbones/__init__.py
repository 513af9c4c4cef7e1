"""CNN image backbones cut at stride 16, loading their state dicts strictly."""
