// Runs the fuzz target once on each file (or each file of each directory) named on the command
// line, without libFuzzer: the seeds and any crash inputs as regression cases in the gcc
// ASan/UBSan build (`make asan`), where clang's libFuzzer is not needed.
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) { std::fprintf(stderr, "cannot read %s\n", path.c_str()); return 1; }
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
    return 0;
}

int main(int argc, char **argv) {
    int files = 0, errors = 0;
    for (int i = 1; i < argc; ++i) {
        struct stat st;
        if (stat(argv[i], &st) != 0) { std::fprintf(stderr, "no such file %s\n", argv[i]); ++errors; continue; }
        if (S_ISDIR(st.st_mode)) {
            DIR *d = opendir(argv[i]);
            while (struct dirent *e = d ? readdir(d) : nullptr) {
                if (e->d_name[0] == '.') continue;
                errors += run_file(std::string(argv[i]) + "/" + e->d_name);
                ++files;
            }
            if (d) closedir(d);
        } else {
            errors += run_file(argv[i]);
            ++files;
        }
    }
    std::printf("replayed %d inputs, %d unreadable\n", files, errors);
    return errors ? 1 : 0;
}
