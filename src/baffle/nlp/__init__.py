"""Text models: a plain-PyTorch BERT (``bert``) and the pretrained encoders and tokenizer it loads (``pretrained``)."""
