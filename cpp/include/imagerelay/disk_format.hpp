// What an image file holds: its container format and the size of the disk a VM sees, read
// from the file's header (raw has none: the disk is the file).
#pragma once

#include "imagerelay/model.hpp"

namespace imagerelay {

class ByteSource;

// Reads the header (and, for a fixed VHD, the footer) of `source`. Throws
// ValidationError(InvalidParameter) for a file imagerelay cannot take as it is: one that
// needs other files (a qcow2 with a backing or data file, a differencing VHD, a VMDK
// descriptor or delta disk), a format it does not take (VHDX, VDI, QED, qcow v1) or a
// header that contradicts itself. A fixed VHD (a raw disk and a footer) is recognised only
// in a source that reads at any offset cheaply (a local file); from a URL it reads as raw.
DiskFormat ProbeDiskFormat(ByteSource& source);

}  // namespace imagerelay
