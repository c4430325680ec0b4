// Stand-in for a header TensorFlow's wheel references but does not ship (xla/printer.h); see kafrob/native.py.
#pragma once
