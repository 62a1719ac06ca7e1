import { DockerProvider } from '../../providers/docker/docker-provider.js';
import { TEST_IMAGE, cleanUp } from '../helpers/docker.js';
import { describeProviderContract } from './provider-contract.js';

describeProviderContract('docker (local engine)', {
  makeProvider: () => new DockerProvider({ defaultImage: TEST_IMAGE, pullImages: false, stopTimeoutSeconds: 2, swarmId: 'contract-docker' }),
  image: TEST_IMAGE,
  namePrefix: 'contract-docker',
  cleanUp: () => cleanUp('contract-docker'),
});
