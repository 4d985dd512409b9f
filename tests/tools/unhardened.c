/* unhardened.c - a program built without hardening, so the hardening check's test can see it fail. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  char buf[64];
  memcpy(buf, argc > 1 ? argv[1] : "x", 2);
  return puts(buf) < 0;
}
