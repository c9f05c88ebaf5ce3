/* An outside program using an installed libp99: prints the header's and the library's
 * versions and fails if they disagree. */
#include <stdio.h>
#include <string.h>

#include <p99.h>

int main(void)
{
	char header[32];
	snprintf(header, sizeof(header), "%d.%d.%d", P99_VERSION_MAJOR, P99_VERSION_MINOR,
		 P99_VERSION_PATCH);
	printf("header %s library %s\n", header, p99_version());
	if (strcmp(header, p99_version()) != 0 || p99_version_number() != P99_VERSION_NUMBER)
		return 1;
	if (strcmp(p99_status_str(P99_STATUS_OK), "ok") != 0)
		return 1;
	return 0;
}
