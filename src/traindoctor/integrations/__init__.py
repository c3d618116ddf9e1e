"""Ways to attach traindoctor: zero-code (autopatch + runner) and the framework callbacks.

Every entry point here takes the options of `traindoctor.watch` as keyword arguments and
builds one `traindoctor.options.Options` from them (checked, with the entry point's name in
the error), which the Doctor it makes is configured from.
"""
