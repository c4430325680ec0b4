// Stand-in for a header TensorFlow's wheel references but does not ship (xla/printer.h); see kafrob/native.py.
// Only declares the type of a member of a class kafrob never constructs.
#pragma once
namespace highwayhash {
template <unsigned Target>
class HighwayHashCatT {};
}  // namespace highwayhash
