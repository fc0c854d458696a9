#include <stdio.h>

#include "greet.h"

void greet(const char *name)
{
    printf("Hello, %s, from a binary built inside a sandboxfs mount!\n", name);
}
