"""Ways to attach traindoctor: zero-code (autopatch + runner); frameworks come later."""
