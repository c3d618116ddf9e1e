"""TD7xx: experiments on a copy (issue 17), "prove the diagnosis": Karpathy's recipe run at
close under `traindoctor check` (experiments/), each result worded by one rule."""
