"""Multiple-instance learning on slide bags: gated-attention ABMIL for a slide's class or a case's risk."""
