#ifndef AIMESH_CSODIUM_SHIM_H
#define AIMESH_CSODIUM_SHIM_H
#include <sodium.h>
#endif
